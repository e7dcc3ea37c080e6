"""The gitops serving target: commits to a fleet repository that Argo CD syncs to ACM spoke clusters."""
