module gitmesh.local/testenv/pods

go 1.23.0
