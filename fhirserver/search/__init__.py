"""Search: parameter registry from the official definitions, index extraction at write time, query parsing and
compilation to MongoDB filters, _include/_revinclude, sorting, paging."""
