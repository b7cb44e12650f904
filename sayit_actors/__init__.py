"""SayIt's actors, engines, audio handling and Redis state."""
