"""Privacy as a library: DP planning and accounting (pure), site policies, keys and certificates."""
