"""``--method ssai3d`` (the default): the NAFNet adapted to this stack by ``ssai3d adapt`` (or ``ssai3d run``),
on every XZ and YZ slice, the two views averaged."""

from __future__ import annotations

from ssai3d_dask.restoration.methods.network import NetworkRestoration


class SSAI3D(NetworkRestoration):
    name = "ssai3d"
    label = "SSAI-3D"
    folder_kind = "adapted"

    def provenance(self, adapted):
        extra = adapted.manifest.extra
        return dict(extra.get("selection") or {}) | {"base": extra.get("base_model")}
