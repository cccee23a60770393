"""Exceptions of the ken library; each message names the tensor or input and what to fix."""


class KenError(ValueError):
    """Base class of the library's input errors."""


class SubnetworkFormatError(KenError):
    """The bytes are not a valid subnetwork file (or fail one of its checks)."""


class FingerprintMismatch(SubnetworkFormatError):
    """The subnetwork was extracted against a different backbone."""


class IncompatibleModels(KenError):
    """A pretrained and a fine-tuned model that do not belong together."""
