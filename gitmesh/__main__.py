from gitmesh.cli import main

main()
