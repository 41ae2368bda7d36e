"""Everything that talks to CCE and IAM: the job client, authentication, AK/SK signing, TLS, the rate limiter."""
