"""What a classroom server keeps: the run store (`runs`, a SQLite database beside the model files), its
salvage when damaged (`salvage`), one run's link to it while training (`run_link`), and who is who with no
accounts (`identity`, `classroom`). The engine never imports this package."""
