"""Files in and out: checkpoints (official .pth, our .safetensors), verified downloads, the package's data files and
the one sha256 helper."""
