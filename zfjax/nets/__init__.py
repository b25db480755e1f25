"""Networks as data and what derives from the stage table: ``network`` (the stage
tables of ZFNet, AlexNet and the VGGs), ``model`` (the one interpreter: forward and
reverse segments), ``deconv`` (the paper's deconvnet, Sec. 2.1), ``attribution``
(its successors in the same engine), ``strongest`` (where maps fire most),
``receptive_field``, ``weights`` (imported torchvision/Caffe layouts) and
``preprocessing`` (each network's input convention).
"""

from zfjax._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
