from khazna.cli import main

main()
