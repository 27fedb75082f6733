"""What ``gitmesh install`` puts in a cluster, and how it is applied and removed."""
