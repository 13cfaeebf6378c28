"""Fleet: publishing, the bundle server, rollouts, the fleet view, provisioning and the root key list.

May import models/ only."""
