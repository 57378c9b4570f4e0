"""Local mode: the same ingress and worker on an embedded queue and store, plus a throwaway Samba AD DC."""
