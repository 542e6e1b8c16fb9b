from scpnode.cli import main

raise SystemExit(main())
