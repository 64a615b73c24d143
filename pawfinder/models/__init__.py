"""Model building (backbones + PawNet) and ONNX export; needs the ``train`` extra (torch, timm, torchvision)."""
