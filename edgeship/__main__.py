from edgeship.cli import main

raise SystemExit(main())
