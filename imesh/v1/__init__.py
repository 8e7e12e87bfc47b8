"""Generated protobuf and gRPC code for the imesh.v1 contract. Do not edit; run `make proto`."""
