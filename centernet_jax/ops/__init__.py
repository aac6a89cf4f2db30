"""Custom ops: modulated deformable convolution (DCNv2)."""
