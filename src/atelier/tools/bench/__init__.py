"""`atelier bench train | serve | drift | capacity`: benchmarks that print a table."""
