"""Data plane: mmap'd slot pools and rings under /dev/shm, with pyzmq doorbells."""
