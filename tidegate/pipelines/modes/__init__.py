"""The modes, one module each: a mode builds its lanes. The registry
(:mod:`tidegate.pipelines.registry`) names them; a mode never imports the registry."""
