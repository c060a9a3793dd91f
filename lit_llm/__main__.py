from lit_llm.cli import main

if __name__ == "__main__":  # DDP re-runs this entry point, so keep it import-safe
    main()
