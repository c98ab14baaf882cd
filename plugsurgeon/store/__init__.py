"""Models as users name them and as plugsurgeon saves them: sources, saved directories, weights, replay, module configuration."""
