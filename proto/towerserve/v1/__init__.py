"""Generated gRPC/protobuf stubs for towerserve.v1 (regenerate with `make proto`; never edit by hand)."""
