from sayit_cli.cli import main

raise SystemExit(main())
