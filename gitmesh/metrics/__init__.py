"""The one metrics model of the mesh: what each source service sent each destination, from the sidecars."""
