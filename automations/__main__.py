from automations.cli.app import main

main()
