"""ken-serve: many fine-tuned tasks served from one resident backbone by swapping KEN subnetworks in place.

Layout: :mod:`service.engine` owns the backbone (swap + forward), :mod:`service.store` keeps the
subnetwork files, :mod:`service.api` is the HTTP surface, :func:`service.app.create_app` wires them.
"""

__version__ = "0.1.0"
