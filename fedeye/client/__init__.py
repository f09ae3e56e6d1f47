"""A hospital site: the ClientApp, its worker, state folder, ledger, approvals, audit log. Never imports the coordinator."""
