"""The Ray edges of training: starting or joining Ray, the driver (Ray Train's TorchTrainer), the worker
loop around the core engine, the weight store in Ray's object store, the loopback rendezvous."""
