"""rankserve's Ray Serve application, its HTTP and gRPC front ends, and the command line."""
