from tstool.cli.app import main

main()
