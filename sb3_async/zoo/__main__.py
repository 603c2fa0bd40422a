from sb3_async.zoo.cli import main

if __name__ == "__main__":
    main()
