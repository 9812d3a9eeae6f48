from atelier.drift.server import main

if __name__ == "__main__":
    main()
