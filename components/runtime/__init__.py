"""The processes that serve: the KServe model server, its warm launcher and the local traffic router."""
