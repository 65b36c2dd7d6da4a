"""fleetreg's services, one package each: app (factory), handlers, wiring, __main__."""
