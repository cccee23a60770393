"""The service's domain errors. The API maps each to an HTTP status in :mod:`service.api.error_handlers`.

Errors raised by the store (:mod:`service.store`) and the ken library (``ken.SubnetworkFormatError``,
``ken.FingerprintMismatch``, ``ken.KenError``) are mapped there too.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; ``str(error)`` is the message shown to the client."""


class InvalidTaskName(ServiceError):
    pass


class InvalidSubnetwork(ServiceError):
    """An upload that is not a valid subnetwork for this service (format, shapes, head, task type)."""


class BackboneMismatch(ServiceError):
    """A subnetwork extracted against another backbone than the one this service holds."""


class PayloadTooLarge(ServiceError):
    pass


class UnsupportedMediaType(ServiceError):
    pass


class InvalidInput(ServiceError):
    """A request that is well-formed JSON but breaks a limit or a rule (too many inputs, bad tensor shape)."""


class WrongTaskType(ServiceError):
    """A task sent to a route that does not serve its task type (the message names the right route)."""


class MissingCredentials(ServiceError):
    pass


class WrongCredentials(ServiceError):
    pass


class AdminDisabled(ServiceError):
    """Admin routes are refused: no admin token is configured and the server listens beyond loopback."""


class NonFiniteOutput(ServiceError):
    """A task's weights gave NaN or Inf scores for a request: answered as an error, never as numbers."""


class EngineStopped(ServiceError):
    """The backbone owner is not running (start-up failed, or the service is shutting down)."""
