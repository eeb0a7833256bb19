"""Who may call the gateway and how often: credentials (API keys, JWT), scopes, quotas."""
