"""Ways to run a job: in this process (`local`); later, across machines."""
