"""Scale-out on Ray Serve: N replicas, each one resident backbone and its owner thread, behind one ingress.

``routing`` names the model a request needs (``task@version``), ``versions`` finds a task's current
version, ``forwarding`` carries an HTTP request to a replica's app and back, ``ray_app`` holds the
deployments, ``cluster`` starts or joins the Ray cluster. Only ``ray_app`` and ``cluster`` import Ray.
"""
