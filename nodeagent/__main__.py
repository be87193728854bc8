from nodeagent.cli.main import main

raise SystemExit(main())
