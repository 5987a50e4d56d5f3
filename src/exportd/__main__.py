from exportd.cli.commands import main

main()
