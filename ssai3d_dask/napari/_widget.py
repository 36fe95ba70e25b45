"""The dock widget: pick an image layer, check its voxel size, run, watch, cancel; the isotropic result comes
back as a multiscale layer with its physical scale."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                            QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ssai3d_dask.napari._logic import CancellableProgress, neuroglancer_link, restore_layer_data

METHODS = ("ssai3d", "interp")


class _Relay(QObject):
    """Carries progress from the worker thread to the widget (a queued signal: drawn in the GUI thread)."""

    event = Signal(object)


class RestoreWidget(QWidget):
    """Make an image layer isotropic with SSAI-3D (adapt, then restore) or plain z interpolation."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.layer = QComboBox()
        self.voxel = [QDoubleSpinBox() for _ in range(3)]
        for box in self.voxel:
            box.setDecimals(4)
            box.setRange(1e-4, 1e4)
            box.setSuffix(" um")
        self.method = QComboBox()
        self.method.addItems(METHODS)
        self.iterations = QSpinBox()
        self.iterations.setRange(0, 100000)
        self.iterations.setSpecialValueText("default")
        self.out = QLineEdit()
        self.out.setPlaceholderText("OME-Zarr path (default: a temporary folder)")
        self.run_button, self.cancel_button = QPushButton("Restore"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.neuroglancer_button = QPushButton("Open in neuroglancer")
        self.neuroglancer_button.setEnabled(False)
        self.result_path, self.server = None, None
        self.bar, self.status = QProgressBar(), QLabel("")
        form = QFormLayout()
        form.addRow("image", self.layer)
        voxel_row = QHBoxLayout()
        for box in self.voxel:
            voxel_row.addWidget(box)
        form.addRow("voxel z, y, x", voxel_row)
        form.addRow("method", self.method)
        form.addRow("fine-tuning steps", self.iterations)
        form.addRow("output", self.out)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.neuroglancer_button)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.neuroglancer_button.clicked.connect(self.open_neuroglancer)
        self.layer.currentTextChanged.connect(self._scale_from_layer)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.progress = None
        self.worker = None
        self.relay = _Relay()
        self.relay.event.connect(self._show)
        self._refresh()

    def _images(self):
        from napari.layers import Image

        return [lay for lay in self.viewer.layers if isinstance(lay, Image) and lay.ndim == 3]

    def _refresh(self, *_):
        current = self.layer.currentText()
        self.layer.clear()
        self.layer.addItems([lay.name for lay in self._images()])
        if current:
            self.layer.setCurrentText(current)

    def _scale_from_layer(self, name: str):
        for lay in self._images():
            if lay.name == name:
                for box, s in zip(self.voxel, lay.scale[-3:]):
                    box.setValue(float(s))

    def _report(self, desc: str, done: int, total: int):
        self.relay.event.emit((desc, done, total))

    def _show(self, event):
        desc, done, total = event
        self.bar.setMaximum(max(total, 1))
        self.bar.setValue(done)
        self.status.setText(desc)

    def start(self):
        from napari.qt.threading import create_worker

        layer = next((lay for lay in self._images() if lay.name == self.layer.currentText()), None)
        if layer is None:
            self.status.setText("open a 3D image layer first")
            return
        self.progress = CancellableProgress(self._report)
        data = layer.data[0] if layer.multiscale else layer.data
        self.worker = create_worker(restore_layer_data, data, [b.value() for b in self.voxel],
                                    self.out.text().strip() or None, self.method.currentText(),
                                    self.iterations.value() or None, self.progress, _start_thread=False)
        self.worker.returned.connect(lambda result: self._add(layer.name, result))
        self.worker.errored.connect(lambda exc: self.status.setText(f"stopped: {exc}"))
        self.worker.finished.connect(self._idle)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.worker.start()

    def cancel(self):
        if self.progress is not None:
            self.progress.cancel()
            self.status.setText("cancelling at the next step...")

    def _idle(self):
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _add(self, name: str, result):
        levels, voxel, out = result
        data = levels if len(levels) > 1 else levels[0]  # a small result has one level: not multiscale
        self.viewer.add_image(data, multiscale=len(levels) > 1, scale=voxel, name=f"{name} isotropic",
                              metadata={"path": str(Path(out))})
        self.status.setText(f"written to {out}")
        self.result_path = out
        self.neuroglancer_button.setEnabled(True)

    def open_neuroglancer(self):
        """The result in neuroglancer (its folder served on 127.0.0.1 while napari runs), in the browser."""
        import webbrowser

        url, self.server = neuroglancer_link(self.result_path, self.server)
        self.status.setText(url)
        webbrowser.open(url)
