"""Networks and their checkpoints: NAFNet, the CARE U-Net, model folders."""
