from gridpde.cli import main

raise SystemExit(main())
