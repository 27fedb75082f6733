"""The controller: ``gitmesh run`` keeping the backend in step with its sources, and its HTTP port."""
