"""PyTorch reference modules written from the published architectures (for conversion parity).

One module per architecture, mirroring ``centernet_jax/models/``; each reproduces the official
code's structure and ``state_dict`` names, with widths and depths as arguments so the tests can
run small variants on CPU:

  resnet      torchvision ResNet (also mmdet ``ResNet(style='pytorch')``).
  centernet   official CenterNet ``msra_resnet.py`` (res_18, res_101).
  resnet_dcn  official CenterNet ``resnet_dcn.py`` (resdcn_18, resdcn_101).
  dla         official ``pose_dla_dcn.py`` (dla_34; ``base.*`` = DLA with its ImageNet ``fc``).
  hourglass   CenterNet ``large_hourglass.py`` (``exkp``).
  cornernet   official CornerNet (``kp`` with corner pools).
  mmdet       mmdetection CenterNet and CornerNet.
  dcn         DCNv2 with explicit bilinear sampling; heads: the CenterNet head and the official
              multi_pose head table; randomize: random weights and BN statistics.
"""
