"""Floor 2: networks (UNet, transformer blocks, autoencoder), no diffusion math."""
