"""Sidecar injection: what a pod gets to join the mesh (``patch``), the iptables rules its init
container sets (``capture``), and the admission webhook that applies the patch (``webhook``)."""
