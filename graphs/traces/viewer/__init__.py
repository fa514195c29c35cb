"""The read-only trace viewer: a standard-library HTTP server (`server`) routing (`routes`) to Jinja pages
(`views`) over the trace store, with the token colouring (`tokens`), path diagram (`path_diagram`), query
validation (`query_params`), formatting and host check each in a module of its own."""
