"""burst worker: the daemon, its local job queue and the executor that runs each job."""
