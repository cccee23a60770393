"""KEN subnetworks: extraction, a compact file format, and in-place apply/revert on a backbone.

The public surface::

    mask = ken.kept_mask(weight, k=100)                       # the selection rule
    sub = ken.extract(base_dir, finetuned_dir, k=100)         # a Subnetwork
    data = ken.save_bytes(sub); sub = ken.load_bytes(data)    # the file (also save_file/load_file)
    flat = ken.FlatParameters(backbone)                       # backbone weights in one buffer
    swapper = ken.Swapper(flat)
    swapper.apply(ken.DeltaPlan(sub, flat)); ...; swapper.revert()   # bit-exact round trip
    swapper.switch(other_plan)                                # task A -> task B in one pass
    ken.MixedForward(backbone, flat).logits(groups, inputs)   # several tasks in one pass, weights read only
"""

from ken.backbone import fingerprint, load_backbone_model
from ken.errors import FingerprintMismatch, IncompatibleModels, KenError, SubnetworkFormatError
from ken.extraction import METHODS, PRESETS, extract
from ken.fileformat import load_bytes, load_file, read_info, save_bytes, save_file
from ken.materialize import materialize, materialized_state
from ken.mixed import MixedForward, MixedGroup, MixedUnsupported
from ken.selection import kept_mask
from ken.subnetwork import SparseRows, Subnetwork, SubnetworkInfo
from ken.swap import DeltaPlan, FlatParameters, Swapper
from ken.taskmodel import attach_head

__all__ = [
    "METHODS",
    "PRESETS",
    "DeltaPlan",
    "FingerprintMismatch",
    "FlatParameters",
    "IncompatibleModels",
    "KenError",
    "MixedForward",
    "MixedGroup",
    "MixedUnsupported",
    "SparseRows",
    "Subnetwork",
    "SubnetworkFormatError",
    "SubnetworkInfo",
    "Swapper",
    "attach_head",
    "extract",
    "fingerprint",
    "kept_mask",
    "load_backbone_model",
    "load_bytes",
    "load_file",
    "materialize",
    "materialized_state",
    "read_info",
    "save_bytes",
    "save_file",
]
