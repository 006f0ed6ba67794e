"""The only code that talks to MongoDB: connections, collections, the commit protocol, indexes."""
